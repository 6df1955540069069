"""OpenAI's wire formats (requests, objects, errors and sampling in engine-neutral terms),
below the engines and the services that use them."""
