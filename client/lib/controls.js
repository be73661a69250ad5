// Parameter controls built from the server's JSON schema (/params/schema), and the server's params echo.

import { authHeaders } from "./access.js";
import { isModulationsSchema, modulationsWidget } from "./modulations.js";

const TEXT_DEBOUNCE_MS = 400;
const SLIDER_DEBOUNCE_MS = 150;
// Above this many positions a slider cannot hit a chosen value (think seed), so a number box is used instead.
const MAX_SLIDER_POSITIONS = 1000;

export class SchemaError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export async function loadParamSchema() {
  let response;
  try {
    response = await fetch("/params/schema", { headers: authHeaders() });
  } catch (err) {
    throw new SchemaError("schema", `Could not load the parameter list (${err.message}); the server's defaults apply.`);
  }
  if (response.status === 401) {
    const refusal = await response.json();
    throw new SchemaError(refusal.code, refusal.message);
  }
  if (!response.ok) {
    const why = `HTTP ${response.status}`;
    throw new SchemaError("schema", `Could not load the parameter list (${why}); the server's defaults apply.`);
  }
  return response.json();
}

// The controls of one page. `send(params)` is called with each change the user makes; the page decides where
// it goes (values changed while no socket is open stay in the controls).
export class ParamControls {
  // Expects the page's prompt <textarea> (and the row around it), a grid for the other controls, a notes list.
  constructor({ prompt, promptRow, grid, notes, send }) {
    this.prompt = prompt;
    this.promptRow = promptRow;
    this.grid = grid;
    this.notes = notes;
    this.send = send;
    this.controls = new Map(); // param name -> control
    this.built = false;
    this.lastParams = null;
  }

  build(schema) {
    this.controls.clear();
    this.grid.replaceChildren();
    for (const [name, paramSchema] of Object.entries(schema.properties ?? {})) {
      // The prompt is the one parameter people change all the time, so it gets the big box above the grid.
      const widget = name === "prompt" ? textWidget(this.prompt) : this.createWidget(name, paramSchema);
      if (typeof paramSchema.maxLength === "number") widget.input.maxLength = paramSchema.maxLength;
      const control = createParamControl(widget, (value) => this.send({ [name]: value }));
      if (paramSchema.default !== undefined) control.write(paramSchema.default);
      this.controls.set(name, control);
    }
    this.promptRow.hidden = !this.controls.has("prompt");
    this.built = true;
  }

  has(name) {
    return this.controls.has(name);
  }

  // Names of the controls that start with `prefix` (e.g. every ControlNet kind's scale).
  namesStartingWith(prefix) {
    return [...this.controls.keys()].filter((name) => name.startsWith(prefix));
  }

  // What the controls show, to send with a new session.
  values() {
    const values = {};
    for (const [name, control] of this.controls) {
      const value = control.read();
      if (value !== undefined) values[name] = value;
    }
    return values;
  }

  // The server's effective params (a full set, after any change from any page): shown, except where the user
  // is editing.
  apply(params, notes = []) {
    this.lastParams = params;
    for (const [name, value] of Object.entries(params)) {
      const control = this.controls.get(name);
      if (control && !control.hasUnsentEdit()) control.write(value);
    }
    this.notes.replaceChildren(...notes.map((note) => listItem(note)));
  }

  setPrompt(text) {
    this.prompt.value = text;
    this.controls.get("prompt")?.send();
  }

  createWidget(name, schema) {
    const widget = widgetForSchema(schema);
    widget.input.id = `param-${name}`;
    widget.input.name = name;
    widget.input.dataset.param = name;
    this.grid.append(fieldFor(name, schema, widget));
    return widget;
  }
}

function listItem(text) {
  const item = document.createElement("li");
  item.textContent = text;
  return item;
}

function widgetForSchema(schema) {
  if (isModulationsSchema(schema)) return modulationsWidget(schema);
  if (Array.isArray(schema.enum)) return selectWidget(schema.enum);
  if (schema.type === "boolean") return checkboxWidget();
  if (schema.type === "number" || schema.type === "integer") {
    return sliderStep(schema) === null ? numberWidget(schema) : sliderWidget(schema);
  }
  const input = document.createElement("input");
  input.type = "text";
  return textWidget(input);
}

function fieldFor(name, schema, widget) {
  const label = document.createElement("label");
  label.htmlFor = widget.input.id;
  label.textContent = schema.title ?? name.replaceAll("_", " ");
  if (schema.description) label.title = schema.description;
  const head = document.createElement("div");
  head.className = "field-head";
  head.append(label);
  if (widget.readout) head.append(widget.readout);
  const field = document.createElement("div");
  field.className = "field";
  field.append(head, widget.input);
  return field;
}

// A schema parameter bound to its widget. An edit counts as unsent while the widget shows something other
// than what was last sent or received, so the server's full-set echoes never overwrite what is being typed.
function createParamControl(widget, sendValue) {
  let committed = widget.read();
  let timer = null;
  const control = {
    read: widget.read,
    hasUnsentEdit: () => widget.read() !== committed,
    write(value) {
      widget.write(value);
      committed = widget.read();
    },
    send() {
      clearTimeout(timer);
      timer = null;
      const value = widget.read();
      if (value === undefined) return;
      committed = value;
      sendValue(value);
    },
    sendAfter(delayMs) {
      clearTimeout(timer);
      timer = setTimeout(control.send, delayMs);
    },
    flush() {
      if (timer !== null) control.send();
    },
  };
  widget.listen(control);
  return control;
}

function textWidget(input) {
  return {
    input,
    read: () => input.value,
    write: (value) => {
      input.value = String(value);
    },
    listen(control) {
      input.addEventListener("input", () => control.sendAfter(TEXT_DEBOUNCE_MS));
      input.addEventListener("keydown", (event) => {
        if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
        event.preventDefault();
        control.send();
      });
    },
  };
}

function selectWidget(values) {
  const select = document.createElement("select");
  select.append(...values.map((value) => new Option(String(value))));
  return {
    input: select,
    // Reading by index keeps the schema's own value type (a number enum stays a number).
    read: () => values[select.selectedIndex],
    write: (value) => {
      const index = values.indexOf(value);
      if (index >= 0) select.selectedIndex = index;
    },
    listen: (control) => select.addEventListener("change", control.send),
  };
}

function checkboxWidget() {
  const checkbox = document.createElement("input");
  checkbox.type = "checkbox";
  return {
    input: checkbox,
    read: () => checkbox.checked,
    write: (value) => {
      checkbox.checked = Boolean(value);
    },
    listen: (control) => checkbox.addEventListener("change", control.send),
  };
}

// The slider step, or null when the schema gives no usable slider (no range, or too many positions).
function sliderStep(schema) {
  const { minimum, maximum } = schema;
  if (typeof minimum !== "number" || typeof maximum !== "number" || maximum <= minimum) return null;
  const range = maximum - minimum;
  // Without multipleOf a number slider gets the power of ten nearest to a hundredth of its range.
  const step = schema.multipleOf ?? (schema.type === "integer" ? 1 : 10 ** Math.round(Math.log10(range / 100)));
  return range / step <= MAX_SLIDER_POSITIONS ? step : null;
}

function decimalsOf(step) {
  return (String(step).split(".")[1] ?? "").length;
}

function sliderWidget(schema) {
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = String(schema.minimum);
  slider.max = String(schema.maximum);
  const step = sliderStep(schema);
  slider.step = String(step);
  const readout = document.createElement("output");
  const showValue = () => {
    readout.textContent = Number(slider.value).toFixed(decimalsOf(step));
  };
  showValue();
  return {
    input: slider,
    readout,
    read: () => Number(slider.value),
    write: (value) => {
      slider.value = String(value);
      showValue();
    },
    listen(control) {
      slider.addEventListener("input", () => {
        showValue();
        control.sendAfter(SLIDER_DEBOUNCE_MS);
      });
      slider.addEventListener("change", control.flush);
    },
  };
}

function numberWidget(schema) {
  const input = document.createElement("input");
  input.type = "number";
  if (typeof schema.minimum === "number") input.min = String(schema.minimum);
  if (typeof schema.maximum === "number") input.max = String(schema.maximum);
  input.step = String(schema.multipleOf ?? (schema.type === "integer" ? 1 : "any"));
  return {
    input,
    // An empty or unparsable box reads as "no value", so nothing is sent for it.
    read: () => (input.value === "" ? undefined : Number(input.value)),
    write: (value) => {
      input.value = String(value);
    },
    listen: (control) => input.addEventListener("change", control.send),
  };
}
