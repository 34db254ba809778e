"""The API front end: OpenAI routes that enqueue jobs and relay their replies."""
