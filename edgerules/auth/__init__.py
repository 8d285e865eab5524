"""Authentication: JWT (PyJWT + JWKS), API keys, identity headers.

Import the submodules (`edgerules.auth.jwt`, `.jwks`, `.apikeys`, `.identity`): this package imports nothing
itself, so `edgerules.policy.model` (which only needs the auth *settings*) never loads PyJWT or cryptography.
"""
