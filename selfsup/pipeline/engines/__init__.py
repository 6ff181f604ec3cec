"""Decode engines: turn sample indices into batches of views."""
