"""SMTP: session (aiosmtplib opens it), pipeline (the bytes on the wire), replies (what they mean)."""
