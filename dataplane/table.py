"""Output for people (aligned tables) and scripts (JSON with -o json, as kubectl)."""
import json


def render(rows, columns, fmt="table"):
    """rows: list of dicts; columns: list of (header, key)."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    cells = [[h.upper() for h, _ in columns]]
    cells += [["" if r.get(k) is None else str(r.get(k)) for _, k in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def counters_rows(counters):
    """Flatten Dataplane.counters() into (counter, value) rows, zero drops left out."""
    rows = [{"counter": f"{section}.{k}", "value": v}
            for section in ("bridge", "fdb", "gateway", "overlay", "services", "conntrack")
            for k, v in counters.get(section, {}).items()]
    rows += [{"counter": f"drop.{k}", "value": v} for k, v in counters["drops"].items() if v]
    return rows


def port_rows(counters):
    return [dict(port=p, **c) for p, c in sorted(counters["ports"].items())]


PORT_COLUMNS = [("port", "port"), ("pod", "pod"), ("rx pkts", "rx_packets"), ("rx bytes", "rx_bytes"),
                ("tx pkts", "tx_packets"), ("tx bytes", "tx_bytes"), ("rx dropped", "rx_dropped")]
FDB_COLUMNS = [("mac", "mac"), ("domain", "domain"), ("port", "port"), ("static", "static"),
               ("age s", "age")]
