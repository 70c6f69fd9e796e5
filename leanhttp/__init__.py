"""The lean HTTP plumbing that everything speaking HTTP out shares: the relay backend
(backends/openai) and the load tester (loadtest/) both import it, and it belongs to
neither, so serving never depends on the test tool. It imports nothing of the project."""
