"""The InferenceSet controller: N identical inference Workspaces, scaled as one."""
