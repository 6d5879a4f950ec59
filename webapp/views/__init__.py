"""Thin routes, one blueprint per area: parse the input, call one function, render."""
