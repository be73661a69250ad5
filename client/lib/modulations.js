// The `modulations` param's editor: rows of param, source, amount (-1..1) and smoothing (ms) that link the
// stream's sound to its params. A widget of controls.js (input, read, write, listen): ParamControls sends the
// whole list as the param's value, and the server's echo writes it back.

const AMOUNT_STEP = 0.05;
const SLIDER_DEBOUNCE_MS = 150;

// Whether `schema` is the modulations param's: a list of objects with a param and a source to choose.
export function isModulationsSchema(schema) {
  const entry = schema?.items?.properties;
  return schema?.type === "array" && Array.isArray(entry?.param?.enum) && Array.isArray(entry?.source?.enum);
}

export function modulationsWidget(schema) {
  const entry = schema.items.properties;
  const params = entry.param.enum;
  const sources = entry.source.enum;
  const maxRows = schema.maxItems ?? 8;
  const smoothMax = entry.smooth_ms?.maximum ?? 2000;
  const smoothDefault = entry.smooth_ms?.default ?? 100;

  const box = document.createElement("div");
  box.className = "modulations";
  const rows = document.createElement("div");
  rows.className = "modulation-rows";
  const add = document.createElement("button");
  add.type = "button";
  add.textContent = "+ modulation";
  add.title = `link a param to the sound (at most ${maxRows})`;
  box.append(rows, add);

  // The list as last read or written: one array object until an edit, so that ParamControls sees an unsent
  // edit (a new array) only when there is one.
  let current = [];
  let control = null;

  function entryRow(item) {
    const row = document.createElement("div");
    row.className = "modulation";
    const param = select(params, item.param, "param");
    const source = select(sources, item.source, "source");
    const amount = document.createElement("input");
    amount.type = "range";
    amount.min = "-1";
    amount.max = "1";
    amount.step = String(AMOUNT_STEP);
    amount.value = String(item.amount);
    amount.dataset.key = "amount";
    amount.title = "amount: the share of the param's range a full source moves it (below 0: down)";
    const readout = document.createElement("output");
    const showAmount = () => {
      readout.textContent = Number(amount.value).toFixed(2);
    };
    showAmount();
    const smooth = document.createElement("input");
    smooth.type = "number";
    smooth.min = "0";
    smooth.max = String(smoothMax);
    smooth.step = "10";
    smooth.value = String(item.smooth_ms ?? smoothDefault);
    smooth.dataset.key = "smooth_ms";
    smooth.title = "smoothing, ms";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove this modulation";
    remove.addEventListener("click", () => {
      row.remove();
      edited(true);
    });
    param.addEventListener("change", () => edited(true));
    source.addEventListener("change", () => edited(true));
    amount.addEventListener("input", () => {
      showAmount();
      edited(false);
    });
    amount.addEventListener("change", () => edited(true));
    smooth.addEventListener("change", () => edited(true));
    row.append(param, source, amount, readout, smooth, remove);
    return row;
  }

  // The rows as the list the server takes; a smoothing box left empty or out of range is clamped into range.
  function rowsAsList() {
    return [...rows.children].map((row) => {
      const value = (key) => row.querySelector(`[data-key="${key}"]`).value;
      const smooth = Number(value("smooth_ms"));
      return {
        param: value("param"),
        source: value("source"),
        amount: Number(value("amount")),
        smooth_ms: Number.isFinite(smooth) ? Math.min(Math.max(smooth, 0), smoothMax) : smoothDefault,
      };
    });
  }

  function edited(now) {
    current = rowsAsList();
    add.disabled = current.length >= maxRows;
    if (!control) return;
    if (now) control.send();
    else control.sendAfter(SLIDER_DEBOUNCE_MS);
  }

  add.addEventListener("click", () => {
    if (rows.children.length >= maxRows) return;
    const param = params.includes("strength") ? "strength" : params[0];
    rows.append(entryRow({ param, source: sources[0], amount: 0.25 }));
    edited(true);
  });

  return {
    input: box,
    read: () => current,
    write(value) {
      if (!Array.isArray(value)) return;
      rows.replaceChildren(...value.map(entryRow));
      current = value;
      add.disabled = value.length >= maxRows;
    },
    listen(paramControl) {
      control = paramControl;
    },
  };
}

function select(values, chosen, key) {
  const element = document.createElement("select");
  element.append(...values.map((value) => new Option(value, value, false, value === chosen)));
  element.dataset.key = key;
  element.title = key;
  return element;
}
