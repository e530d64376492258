"""The pure scheduler core: events in, commands out; no asyncio, no nats, no clock."""
