"""Partitions, departments, mailboxes, users and tokens: the rules that every area relies on."""
