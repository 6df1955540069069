"""The container tier runs only when asked (`make test-container`, which .ci/run calls after
`make test`): building the image compiles llama.cpp, which does not fit the main suite."""
