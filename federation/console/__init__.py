"""The web console: a live, read-only view of a federation (``fed console``; ``fed up`` runs one).

- :mod:`~federation.console.model`: what the console knows of each region and the views the
  pages show (pure);
- :mod:`~federation.console.watch`: reads every region's streams and buckets into the model by
  batched direct gets (no consumer, nothing asked of a scheduler);
- :mod:`~federation.console.pages`: the pages as HTML (pure);
- :mod:`~federation.console.server`: the web server, live updates by server-sent events, cancel.
"""
