"""The alternatives tierbatch is measured against, each run the way its
authors describe it, against the same local Gemini-compatible server."""
