"""Demos run by ``rolewire demo``: the paper's web shop (:mod:`.webshop`)."""
