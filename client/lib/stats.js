// The stats a stream sends each second, shown as a small table (over the video, or in a panel).

// The stats shown, in display order; the rest of each message (totals) stays in `last`.
const STAT_LABELS = {
  fps_in: "fps in",
  fps_out: "fps out",
  model_ms: "model ms",
  latency_ms: "latency ms",
  // Where the latency goes: each stage's median over the last second (server/stats.py STAGES).
  stage_decode: "· decode ms",
  stage_wait: "· wait ms",
  stage_prepare: "· prepare ms",
  stage_model: "· model ms",
  stage_encode: "· encode ms",
  stage_hold: "· hold ms",
  stage_send: "· send ms",
  sound_delay_ms: "sound delay ms",
  size: "size",
  viewers: "viewers",
  dropped: "dropped",
  skipped: "skipped",
  state: "state",
};

export class StatsTable {
  constructor(element) {
    this.element = element;
    this.last = null;
  }

  show(message) {
    this.last = message;
    this.element.replaceChildren(...statRows(message).flatMap(([label, value]) => statCells(label, value)));
  }

  clear() {
    this.element.replaceChildren();
  }
}

function statRows(message) {
  const { width, height, stages_ms: stages, ...fields } = message;
  if (width !== undefined || height !== undefined) fields.size = `${width ?? "?"}×${height ?? "?"}`;
  for (const [stage, ms] of Object.entries(stages ?? {})) fields[`stage_${stage}`] = ms;
  return Object.keys(STAT_LABELS)
    .filter((name) => fields[name] != null) // a stream without sound has no sound delay
    .map((name) => [STAT_LABELS[name], formatStat(fields[name])]);
}

function formatStat(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(1);
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function statCells(label, value) {
  const labelCell = document.createElement("span");
  labelCell.textContent = label;
  const valueCell = document.createElement("span");
  valueCell.className = "stat-value";
  valueCell.textContent = value;
  return [labelCell, valueCell];
}
