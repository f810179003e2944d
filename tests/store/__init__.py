"""The store contract suite: tests every :class:`daemon.store.Store` backend must pass.

Every test takes the ``store_factory`` fixture (``tests/store/conftest.py``),
which runs it once per backend in :data:`tests.store.backends.FACTORIES`. A
new backend (PostgreSQL, issue 11) joins the suite by adding one
:class:`~tests.store.backends.StoreFactory` subclass to that table.

- ``test_methods.py``: what each protocol method does, one class per method.
- ``test_transactions.py``: ``commit`` and ``record`` are all or nothing,
  also when cancelled.
- ``test_concurrency.py``: many tasks, and two store objects, on one database.
- ``test_crash.py``: a committing child process killed with SIGKILL.
- ``test_migrations.py``: fresh, upgraded and too-new schemas.
- ``test_sqlite.py``: what only the SQLite backend promises.

``state.py`` reads everything a store holds, through the protocol, into one
comparable value; a new protocol method that holds state adds its reading
there, and the transaction and crash tests then cover it.
"""
