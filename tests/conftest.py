"""Shared test set-up: MSAL pointed at m365sim."""
