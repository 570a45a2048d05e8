"""The container's processes: how they are started, confined and watched."""
