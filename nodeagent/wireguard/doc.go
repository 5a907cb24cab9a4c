// Package wireguard owns a node's tunnels to the other clusters of the
// federation: its key pair, its WireGuard device (the kernel module when the
// kernel has it, otherwise an embedded wireguard-go device on a TUN), the
// device's peers and the routes to remote pod CIDRs through the device.
//
// The package splits in two halves, as every fedmesh reconciler does:
//
//   - Pure: [Desired] turns the federation's Node and Cluster objects into the
//     device configuration a node should have, and [Reconcile] compares it with
//     what the device has ([Actual]) and returns the minimal [Plan]. Neither
//     touches the kernel; both are tested without root.
//   - I/O: [Device] creates or adopts the device, reads its [Actual] state,
//     applies a [Plan] through wgctrl (peers) and netlink (routes and MTU),
//     rotates its key and reports per-peer status.
//
// # Network namespaces
//
// A device can live in a network namespace other than the caller's (the lab
// and the tests run one "node" per namespace inside a single process). What
// binds to a namespace, and how this package makes each piece land in the
// right one:
//
//   - The TUN device is created by a goroutine locked to its OS thread that
//     has setns'd into the target namespace; the fd stays bound to that
//     namespace, so wireguard-go's reader and writer goroutines may run on any
//     thread afterwards. The TUN's netlink event socket is opened in the same
//     call, so link up/down and MTU events come from the right namespace.
//   - wireguard-go opens its UDP sockets in conn.Bind.Open, which it calls
//     from whichever goroutine brings the device up or changes listen_port
//     (the TUN event reader, or the UAPI handler serving wgctrl) — i.e. from
//     an arbitrary thread in an arbitrary namespace. The device is therefore
//     given a Bind wrapper whose Open runs the standard bind's Open on a
//     thread locked into the target namespace; sockets opened there stay
//     there. (A side effect: wireguard-go only starts its "sticky socket"
//     route listener for a bare *conn.StdNetBind, so the wrapped bind has no
//     source-address pinning; node underlays have one address, so nothing is
//     lost.)
//   - The TUN's MTU() looks the device up by name with an ioctl on a fresh
//     socket, so it too is wrapped to run inside the namespace.
//   - The UAPI socket /var/run/wireguard/<dev>.sock is a path on the file
//     system, shared by every namespace: device names must be unique on the
//     machine ([DeviceName] derives one from the cluster and node names).
//   - wgctrl's client is created inside the namespace, so its generic-netlink
//     socket (used for kernel devices) talks to the right namespace; for
//     wireguard-go devices it dials the UAPI socket.
//   - Routes and links are programmed through a netlink handle opened in the
//     namespace (netlink.NewHandleAt).
//
// # Key rotation
//
// [Device.Rotate] writes a new private key to disk first (so a crash never
// loses the key the device uses) and then gives it to the device. The node's
// existing sessions keep decrypting what peers send; its own sends wait for a
// handshake that peers accept once they have replaced the node's old public
// key with the new one. On the peers' side [Reconcile] turns a changed key into
// "remove old peer, add new peer" in one wgctrl transaction, routes untouched,
// and kicks the new peer (a keepalive that forces an immediate handshake; see
// Plan.Kick), so a flow is interrupted for one handshake after the peer
// learns the new key, even a flow in which only the rotated node sends.
package wireguard
