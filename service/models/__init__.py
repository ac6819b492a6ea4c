"""The models the service runs: discovery (``registry``), one model folder loaded into its runner
(``served``) or a text-generation decoder (``generative``), the thread each model runs on
(``worker``), dynamic batching (``batching``) and config.pbtxt (``config``).

A registry is the model backend the app talks to: ``service.engines.ray`` offers the same interface
over Ray Serve deployment handles. May import: service.errors, service.settings, service.protocol,
service.telemetry.
"""
