"""The daemon's HTTP listeners.

``ops`` serves metrics, health probes and the admin API; ``serve`` starts and
stops an aiohttp application on a host and port. Plugins add their own routes
(single sign-on, the portal) to the public listener.
"""
