"""The monitor, and requeue and remove over the API."""
from . import ApiError, bp, json_body, require_admin  # noqa: F401
