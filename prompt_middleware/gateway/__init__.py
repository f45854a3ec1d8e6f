"""The gateway a person deploys: upstream proxy, echo upstream, config and the CLI."""
