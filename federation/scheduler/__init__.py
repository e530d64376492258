"""A region's scheduler daemon: the I/O around the pure core (:mod:`federation.core`).

- :mod:`.daemon`: the process: stands by until it wins the lease, then runs a leader;
- :mod:`.leader`: the region's scheduling while the lease is held: consumers, the loop that feeds
  the core what the bus delivers and carries out the commands it returns;
- :mod:`.recovery`: a new leader's load of the region's ledgers and records, and its fencing sweep;
- :mod:`.intake`: the region's messages turned into core events, or quarantined;
- :mod:`.lease`: the region's leader lease, whose epoch fences every write;
- :mod:`.journal`: the core's inputs, journalled batch by batch so ``fed audit verify`` can re-run them;
- :mod:`.peering`: the other regions' capacity summaries (views), and this region's own;
- :mod:`.handoff`: jobs offered to and taken from other regions;
- :mod:`.tenants`: the window through which tenants see their own jobs and logs.
"""
