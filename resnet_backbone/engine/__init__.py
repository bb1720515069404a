"""Running it with mmengine: the Runner set-up, CPU distributed, dependency quirks."""
