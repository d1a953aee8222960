"""Development tooling (embedded servers, the `ai-usage run` demo): never imported by the
worker, the beat or the client in production."""
