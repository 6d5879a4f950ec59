"""The engine: claims, composition, SMTP transport, OAuth2 tokens, sender and monitor jobs."""
