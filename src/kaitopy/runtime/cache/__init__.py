"""The cache side (client-go's tools/cache, kube-rs's reflector): `watcher` (list then watch, as an
async stream), `informer` (a watcher filling a `store`, shared per kind and selector) and
`writes` (a controller's own writes until the watch brings them). Nothing here imports the
controller side (an import-linter contract)."""
