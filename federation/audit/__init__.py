"""Reading what happened: the audit trail, its invariant check, the re-run of the core, usage.

- :mod:`.trail`: the audit stream's events (one per stored message), reading and merging them;
- :mod:`.check`: rebuilding the state from those events and checking the invariants (``fed audit check``);
- :mod:`.verify`: re-running the journalled core over its recorded inputs (``fed audit verify``);
- :mod:`.usage`: who used how much of whose capacity, from the trail (``fed usage``).
"""
