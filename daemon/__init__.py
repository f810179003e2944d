"""provisiond: a self-hosted identity bridge.

The core (this package) polls a directory source, works out what changed, and
hands each target plugin the changes in its assignment scope. Application
knowledge lives in plugins (see ``daemon.hookspecs`` for the contract).
"""

__version__ = "0.1.0"
