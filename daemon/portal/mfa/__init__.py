"""Second factors at the portal: TOTP, passkeys, recovery codes, and the sign-in flow."""
