"""The Mail Sender settings, status, start and stop, and test over the API."""
from . import ApiError, bp, json_body, require_admin  # noqa: F401
