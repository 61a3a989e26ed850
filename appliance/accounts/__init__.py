"""Family accounts as use cases: passwords (argon2), TOTP (pyotp), logins,
sessions and the approval decisions an account makes with a TOTP code."""
