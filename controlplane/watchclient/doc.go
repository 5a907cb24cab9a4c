// Package watchclient owns following the control plane's Watch API, for
// every client of it (the node agent, the syncers): resuming from the last
// revision delivered whole, assembling snapshot chunks into one snapshot,
// detecting stale messages, events without a base snapshot and broken
// snapshots (the client then resumes from its own revision), and
// reconnecting with jittered exponential backoff.
//
// # Shape
//
// Follower (follow.go) is pure: watch messages in, whole snapshots and new
// events out, with the revision the client is at. Watcher (watcher.go) is
// the watch goroutine: it keeps one stream open to the control plane and
// moves its messages to the client's own goroutine, which owns a Follower
// and the client's view. When the Follower says the stream cannot be
// followed, the client asks the Watcher (Resync) for a new stream from the
// Follower's revision and discards what is left of the old one until the
// Watcher hands it the new one (Item.NewStream). Backoff (backoff.go) paces
// every retry of a client, reconnects and its other calls alike.
//
// The server's side of the contract is proto/fedmesh/v1/watch.proto: a
// snapshot (chunks at one revision, the last with more = false) when the
// requested revision is gone or zero, then events in revision order and
// progress messages.
package watchclient
