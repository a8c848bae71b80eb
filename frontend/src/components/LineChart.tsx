// A small SVG line chart of the last few minutes: one line per series (the newest point at the right edge), a
// y-axis top label, and a legend with each series' latest value. No chart library.
import { linePath, niceMax } from "../lib/traffic";

const WIDTH = 300;
const HEIGHT = 80;
const PAD = 3; // room above the top and below the axis, so a line at either is not cut in half
const COLOURS = ["#2f5bd3", "#1e8e4e", "#c27c0e", "#8e44ad", "#d13438", "#0f8b8d", "#5f6b7a"];

export interface ChartLine {
  label: string;
  values: (number | null)[];
  tag?: string; // e.g. "bottleneck": the line is drawn thicker and the legend says it
}

interface Props {
  title: string;
  lines: ChartLine[];
  slots: number; // points the x axis spans (the history's window)
  spanText: string; // what the x axis spans, e.g. "last 5 min"
  format: (value: number) => string;
  max?: number; // fixed top of the y axis (e.g. 1 for a share); else a round bound over the values
  testId: string;
}

function latest(values: readonly (number | null)[]): number | null {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

export function LineChart({ title, lines, slots, spanText, format, max, testId }: Props) {
  const top = max ?? niceMax(lines.flatMap((l) => l.values));
  const summary = lines.map((l) => {
    const now = latest(l.values);
    return `${l.label} ${now === null ? "no data" : format(now)}`;
  });
  return (
    <figure className="chart" data-testid={testId}>
      <figcaption className="chart-title small">
        <span>{title}</span>
        <span className="muted">{spanText} · top {format(top)}</span>
      </figcaption>
      <svg viewBox={`0 ${-PAD} ${WIDTH} ${HEIGHT + 2 * PAD}`} preserveAspectRatio="none" role="img"
           aria-label={`${title}: ${summary.join(", ")}`}>
        <line className="chart-axis" x1={0} y1={HEIGHT} x2={WIDTH} y2={HEIGHT} />
        <line className="chart-grid" x1={0} y1={HEIGHT / 2} x2={WIDTH} y2={HEIGHT / 2} />
        {lines.map((l, i) => (
          <path key={l.label} d={linePath(l.values, slots, top, WIDTH, HEIGHT)} fill="none"
                stroke={COLOURS[i % COLOURS.length]} strokeWidth={l.tag ? 2.5 : 1.2}
                vectorEffect="non-scaling-stroke" data-series={l.label} />
        ))}
      </svg>
      <ul className="chart-legend small">
        {lines.map((l, i) => {
          const now = latest(l.values);
          return (
            <li key={l.label} data-testid="chart-series" className={l.tag ? "emphasis" : undefined}>
              <span className="swatch" style={{ background: COLOURS[i % COLOURS.length] }} aria-hidden="true" />
              {l.label}: {now === null ? "–" : format(now)}
              {l.tag && <strong className="bottleneck-tag"> {l.tag}</strong>}
            </li>
          );
        })}
      </ul>
    </figure>
  );
}
