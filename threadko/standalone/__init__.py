"""Clients for code that is not a service: RPC calls and event dispatch."""
