"""The engine: claims and outcomes, SMTP, OAuth2 tokens, the node's senders, the monitor job.

Imports webapp.core (the schema and the rules), never the web.
"""
