"""The small Django project the Django backend's tests run: mail goes through relay365.

RELAY365_CONFIG (or RELAY365_API_URL / RELAY365_API_KEY) is set per test with
``override_settings``: the relay's address is known only once it runs.
"""

SECRET_KEY = "relay365-tests-only"
INSTALLED_APPS: list[str] = []
USE_TZ = True

EMAIL_BACKEND = "relay365.integrations.django.EmailBackend"
DEFAULT_FROM_EMAIL = "Contoso <info@contoso.com>"  # the shared mailbox, as in the seed
SERVER_EMAIL = "info@contoso.com"
ADMINS = [("Ops", "ops@example.org")]
EMAIL_SUBJECT_PREFIX = "[Contoso] "
