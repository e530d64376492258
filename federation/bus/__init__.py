"""The only package that talks NATS (:mod:`federation.ops.provision` lays the streams out through it).

Everything else sees :class:`Delivery` (subject, bytes, headers, ack) and the typed messages of
:mod:`federation.schemas`, never a ``nats.aio.msg.Msg``. A :class:`Bus` is one connection and
everything done over it, built in layers, one module and one class each, every class extending
the one before it:

* :mod:`~federation.bus.link` (:class:`~federation.bus.link.Link`): connecting, reconnects,
  closing, the permissions the server refused us, and the helpers every layer shares (a nats-py
  message as a :class:`Delivery`, nats-py's errors as :mod:`federation.errors`);
* :mod:`~federation.bus.messaging` (:class:`~federation.bus.messaging.Messaging`): core publish,
  request/reply, answering requests, subscriptions (held as a :class:`Subscription`), and
  requests answered by several messages;
* :mod:`~federation.bus.streams` (:class:`~federation.bus.streams.Streams`): durable publishing,
  compare-and-set writes to KV keys, reads of a stream's latest messages, what streams and their
  consumers say of themselves, and creating streams as laid out;
* :mod:`~federation.bus.following` (:class:`~federation.bus.following.Following`): durable push
  consumers, ordered tails (:class:`Tail`), followers that outlive outages, and reading a
  stream or a bucket whole.

Beside them, without NATS types: :mod:`~federation.bus.delivery` (:class:`Delivery`),
:mod:`~federation.bus.layout` (what a stream should be, and what one is) and
:mod:`~federation.bus.scan` (reading a stream by batched direct gets, as an auditor must) and
:mod:`~federation.bus.objects` (jobs' files in a region's object store: chunks stored in order,
read by batched direct gets, from another region's store through the hub).
"""

from __future__ import annotations

from federation.bus.delivery import Delivery
from federation.bus.following import Following, Tail
from federation.bus.link import FAILOVER
from federation.bus.messaging import Subscription


class Bus(Following):
    """A connection to one NATS server (a region's, or the hub) and its JetStream."""


__all__ = ["FAILOVER", "Bus", "Delivery", "Subscription", "Tail"]
