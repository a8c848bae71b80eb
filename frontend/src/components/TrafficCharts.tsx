// Where the time goes in a model's pipeline, the last few minutes as /api/cluster reports them: each stage's busy
// share, each link's round trip and bytes per second, and the bottleneck (busiest stage, slowest link) in words.
import { formatBytesRate, formatRtt, formatShare } from "../lib/format";
import { busiestStage, linkName, recentPoints, RECENT_S, slowestLink, stageLines } from "../lib/traffic";
import type { ClusterModel } from "../types";
import { LineChart } from "./LineChart";

const WINDOW_S = 300; // what the coordinator keeps: the charts span it even while the history is shorter

export function TrafficCharts({ model }: { model: ClusterModel }) {
  const history = model.history;
  if (!history || (history.stages.length === 0 && history.links.length === 0)) {
    return <p className="muted small" data-testid="traffic-empty">No traffic yet: the charts start with the first
      micro-batch.</p>;
  }
  const longest = Math.max(0, ...history.stages.map((s) => s.busy_share.length),
                           ...history.links.map((l) => l.bytes_per_s.length));
  const slots = Math.max(2, longest, recentPoints(history.interval_s, WINDOW_S));
  const recent = recentPoints(history.interval_s);
  const stages = stageLines(history, model.replicas);
  const busiest = busiestStage(stages, recent);
  const slowest = slowestLink(history.links, recent);
  const span = `last ${Math.round(WINDOW_S / 60)} min`;
  return (
    <section className="traffic" aria-label={`Where the time goes in ${model.name}`} data-testid="traffic">
      <p className="small" data-testid="bottleneck">
        {busiest
          ? <>Bottleneck: <strong>{busiest.name}</strong>, busy {formatShare(busiest.value)} over the last
            {" "}{RECENT_S} s.</>
          : <>All stages idle over the last {RECENT_S} s.</>}
        {slowest && <> Slowest link: <strong>{slowest.name}</strong>, {formatRtt(slowest.value)} round trip.</>}
      </p>
      <LineChart title="Stage busy share" testId="chart-busy" slots={slots} spanText={span} max={1}
                 format={formatShare}
                 lines={stages.map((s) => ({ label: s.label, values: s.busy_share,
                                             tag: s.label === busiest?.name ? "bottleneck" : undefined }))} />
      {history.links.length > 0 && <>
        <LineChart title="Link round trip" testId="chart-rtt" slots={slots} spanText={span} format={formatRtt}
                   lines={history.links.map((l) => ({ label: linkName(l), values: l.rtt_ms,
                                                      tag: linkName(l) === slowest?.name ? "slowest" : undefined }))} />
        <LineChart title="Link throughput" testId="chart-bytes" slots={slots} spanText={span} format={formatBytesRate}
                   lines={history.links.map((l) => ({ label: linkName(l), values: l.bytes_per_s }))} />
      </>}
    </section>
  );
}
