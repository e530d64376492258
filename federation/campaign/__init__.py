"""A fault campaign against a real local federation, checked by an independent checker.

``history`` records what clients did and saw (and what each job wrote when it ran), ``faults``
injects one fault at a time into a running :class:`federation.ops.launcher.Federation` and measures how
it recovered, ``checker`` judges the run from the documented formats alone (subjects.md: the
``fed audit replay --format jsonl`` export, the run markers), and ``runner`` puts them together
and renders the table. ``bench/faults.py`` runs the full campaign; the tests run a short one.
"""
