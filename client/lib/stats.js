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
  // What the picture can follow: the stream's sound now (server/media/sound_features.py).
  sound_level: "♪ level",
  sound_onset: "♪ onset",
  sound_bpm: "♪ bpm",
  sound_beat: "♪ beat",
  size: "size",
  viewers: "viewers",
  dropped: "dropped",
  skipped: "skipped",
  state: "state",
};

// Shares of 0-1, shown to two decimals (the rest are ms, fps and counts).
const FINE_STATS = new Set(["sound_level", "sound_onset", "sound_beat"]);

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
  const { width, height, stages_ms: stages, sound, modulated, ...fields } = message;
  if (width !== undefined || height !== undefined) fields.size = `${width ?? "?"}×${height ?? "?"}`;
  for (const [stage, ms] of Object.entries(stages ?? {})) fields[`stage_${stage}`] = ms;
  for (const feature of ["level", "onset", "bpm", "beat"]) fields[`sound_${feature}`] = sound?.[feature];
  const rows = Object.keys(STAT_LABELS)
    .filter((name) => fields[name] != null) // a stream without sound has no sound delay
    .map((name) => [STAT_LABELS[name], formatStat(fields[name], FINE_STATS.has(name) ? 2 : 1)]);
  // The values the last frame ran with where `modulations` moved them (the params keep the base).
  for (const [param, value] of Object.entries(modulated ?? {})) rows.push([`~ ${param}`, formatStat(value, 2)]);
  return rows;
}

function formatStat(value, digits = 1) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
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
