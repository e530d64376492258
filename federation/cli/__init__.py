"""``fed``, the command line: one module per command group, each adding its own subcommands.

- :mod:`~federation.cli.entry` the entry point: ``build_parser`` and ``main`` (the only module
  that imports the command modules);
- :mod:`~federation.cli.common` what every command shares: the common options, the state
  directory, ``--json`` output, ``KEY=VALUE`` flags;
- :mod:`~federation.cli.up` ``fed up`` and ``fed chaos``; :mod:`~federation.cli.daemons`
  ``fed scheduler`` and ``fed agent``; :mod:`~federation.cli.jobs` ``fed submit``, ``jobs``,
  ``job``, ``explain``, ``logs``, ``cancel``; :mod:`~federation.cli.status` ``fed status``;
  :mod:`~federation.cli.quarantine` ``fed quarantine``; :mod:`~federation.cli.audit` ``fed audit``;
  :mod:`~federation.cli.usage` ``fed usage``; :mod:`~federation.cli.ops` ``fed config`` and
  ``fed provision``; :mod:`~federation.cli.creds` ``fed creds``.

Dependencies point one way: entry -> command modules -> common; no module imports this package
back (``tests/test_architecture.py`` checks it).
"""

from federation.cli.entry import build_parser, main
from federation.cli.jobs import exit_status

__all__ = ["build_parser", "exit_status", "main"]
