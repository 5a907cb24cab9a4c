package flows

import (
	"net/netip"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The flow path's encoder: AppendFlow writes the record Attribute would
// build straight into protobuf wire form, with no message allocated and no
// reflection, because at tens of thousands of events per second the
// allocations and the reflective encoding of records would cost the node
// several times what attributing them does. TestAppendFlowEncodesAttribute
// holds the two to the same message. Field numbers are flow.proto's.

// Field numbers of fedmesh.v1.Flow and the messages inside it.
const (
	flowTime, flowCluster, flowNode, flowSource, flowDestination = 1, 2, 3, 4, 5
	flowProtocol, flowVerdict, flowDecision                      = 6, 7, 8
	flowDNSName                                                  = 11

	tsSeconds, tsNanos = 1, 2

	wlCluster, wlNamespace, wlPod, wlIdentity, wlIP, wlPort = 1, 2, 3, 5, 6, 7

	decDirection, decKind, decRule, decTier, decSelectedBy, decReason, decRuleID = 1, 2, 3, 4, 5, 6, 7

	ruleRefPolicy, ruleRefKind, ruleRefDirection, ruleRefIndex = 1, 2, 3, 4

	keyCluster, keyNamespace, keyName = 1, 2, 3

	// shipFlows is ShipFlowsRequest.flows.
	shipFlows = 3
)

// AppendFlow appends the wire form of the flow record of ev (a
// fedmesh.v1.Flow, as Attribute builds it) to b.
func (d *Directory) AppendFlow(b []byte, ev dataplane.Event, cluster, node string, now time.Time) []byte {
	d.mu.RLock()
	src, dst := d.byIP[ev.Src.Unmap()], d.byIP[ev.Dst.Unmap()]
	l := d.locals[ev.EndpointID]
	d.mu.RUnlock()

	b = protowire.AppendTag(b, flowTime, protowire.BytesType)
	sec, nsec := now.Unix(), int64(now.Nanosecond())
	b = protowire.AppendVarint(b, uint64(sizeVarintField(tsSeconds, uint64(sec))+sizeVarintField(tsNanos, uint64(nsec))))
	b = appendVarintField(b, tsSeconds, uint64(sec))
	b = appendVarintField(b, tsNanos, uint64(nsec))
	b = appendString(b, flowCluster, cluster)
	b = appendString(b, flowNode, node)
	b = appendWorkload(b, flowSource, src, ev.Src, ev.SrcIdentity, ev.SrcPort)
	b = appendWorkload(b, flowDestination, dst, ev.Dst, ev.DstIdentity, ev.DstPort)
	b = appendVarintField(b, flowProtocol, uint64(ev.Proto))
	v := fedmeshv1.Verdict_VERDICT_ALLOW
	if ev.Verdict == dataplane.Deny {
		v = fedmeshv1.Verdict_VERDICT_DENY
	}
	b = appendVarintField(b, flowVerdict, uint64(v))
	return appendDecision(b, ev, classify(ev, l))
}

// AppendShipped appends one encoded flow as an element of
// ShipFlowsRequest.flows.
func AppendShipped(b, flow []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(b, shipFlows, protowire.BytesType), flow)
}

func sizeVarintField(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
}

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
}

func appendWorkload(b []byte, num protowire.Number, w *fedmeshv1.Workload, a netip.Addr, id uint32, port uint16) []byte {
	var ipBuf [48]byte
	ip := a.AppendTo(ipBuf[:0])
	var n int
	if w != nil {
		n += sizeString(wlCluster, w.Cluster) + sizeString(wlNamespace, w.Namespace) + sizeString(wlPod, w.Pod)
	}
	n += sizeVarintField(wlIdentity, uint64(id)) + protowire.SizeTag(wlIP) + protowire.SizeBytes(len(ip)) + sizeVarintField(wlPort, uint64(port))
	b = protowire.AppendVarint(protowire.AppendTag(b, num, protowire.BytesType), uint64(n))
	if w != nil {
		b = appendString(b, wlCluster, w.Cluster)
		b = appendString(b, wlNamespace, w.Namespace)
		b = appendString(b, wlPod, w.Pod)
	}
	b = appendVarintField(b, wlIdentity, uint64(id))
	b = protowire.AppendBytes(protowire.AppendTag(b, wlIP, protowire.BytesType), ip)
	return appendVarintField(b, wlPort, uint64(port))
}

func sizeKey(k *fedmeshv1.PolicyKey) int {
	return sizeString(keyCluster, k.GetCluster()) + sizeString(keyNamespace, k.GetNamespace()) + sizeString(keyName, k.GetName())
}

func appendKey(b []byte, num protowire.Number, cluster, namespace, name string, size int) []byte {
	b = protowire.AppendVarint(protowire.AppendTag(b, num, protowire.BytesType), uint64(size))
	b = appendString(b, keyCluster, cluster)
	b = appendString(b, keyNamespace, namespace)
	return appendString(b, keyName, name)
}

func appendDecision(b []byte, ev dataplane.Event, c decision) []byte {
	reason := ev.Reason.String()
	dir := uint64(policyType(ev.Direction))
	n := sizeVarintField(decDirection, dir) + sizeVarintField(decKind, uint64(c.kind)) +
		sizeString(decReason, reason) + sizeVarintField(decRuleID, uint64(ev.Rule))
	var ruleSize, keySize int
	if c.kind == fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE {
		o := c.origin
		keySize = sizeString(keyCluster, o.Cluster) + sizeString(keyNamespace, o.Namespace) + sizeString(keyName, o.Name)
		ruleSize = protowire.SizeTag(ruleRefPolicy) + protowire.SizeBytes(keySize) + sizeVarintField(ruleRefKind, uint64(policyKind(o))) +
			sizeVarintField(ruleRefDirection, uint64(policyType(o.Direction))) + sizeVarintField(ruleRefIndex, uint64(o.Index))
		n += protowire.SizeTag(decRule) + protowire.SizeBytes(ruleSize) + sizeString(decTier, tierName(o))
	}
	for _, k := range c.selecting {
		n += protowire.SizeTag(decSelectedBy) + protowire.SizeBytes(sizeKey(k))
	}
	b = protowire.AppendVarint(protowire.AppendTag(b, flowDecision, protowire.BytesType), uint64(n))
	b = appendVarintField(b, decDirection, dir)
	b = appendVarintField(b, decKind, uint64(c.kind))
	if c.kind == fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE {
		o := c.origin
		b = protowire.AppendVarint(protowire.AppendTag(b, decRule, protowire.BytesType), uint64(ruleSize))
		b = appendKey(b, ruleRefPolicy, o.Cluster, o.Namespace, o.Name, keySize)
		b = appendVarintField(b, ruleRefKind, uint64(policyKind(o)))
		b = appendVarintField(b, ruleRefDirection, uint64(policyType(o.Direction)))
		b = appendVarintField(b, ruleRefIndex, uint64(o.Index))
		b = appendString(b, decTier, tierName(o))
	}
	for _, k := range c.selecting {
		b = appendKey(b, decSelectedBy, k.GetCluster(), k.GetNamespace(), k.GetName(), sizeKey(k))
	}
	b = appendString(b, decReason, reason)
	return appendVarintField(b, decRuleID, uint64(ev.Rule))
}
