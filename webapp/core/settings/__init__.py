"""The Mail Sender parameters: fields (the table), validate (the checks), store (read and save)."""
