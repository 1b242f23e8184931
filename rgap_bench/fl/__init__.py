"""Federated clients: what a participant computes and sends to the server."""
