"""What the web and the engine both rely on: the schema, the rules, composing and queueing.

Imports neither the engine (scheduler/) nor the web (webapp.views, webapp.api, ...).
"""
