"""Typed settings, their loader, logging set-up and the root of Jisr's exception tree.

Every other package may import ``config``; ``config`` imports none of them.
"""
