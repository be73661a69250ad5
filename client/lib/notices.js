// What a page tells the user about its connection: a status light with a word, and an error banner.

export class StatusLight {
  // `texts` maps each state to the words shown; the state also goes to data-state, which colours the light.
  constructor(element, texts) {
    this.element = element;
    this.texts = texts;
  }

  set(state, text = this.texts[state]) {
    this.element.dataset.state = state;
    this.element.textContent = text;
  }

  get state() {
    return this.element.dataset.state;
  }
}

// Expects <div id="error"><span id="error-message"></span><button id="error-dismiss"></button></div>.
export class ErrorBanner {
  constructor(root = document.getElementById("error")) {
    this.root = root;
    this.message = root.querySelector("#error-message");
    this.last = null; // {code, message} of the latest error shown, kept after it is dismissed
    root.querySelector("#error-dismiss").addEventListener("click", () => this.dismiss());
  }

  show(code, message) {
    this.last = { code, message };
    this.root.dataset.code = code;
    this.message.textContent = message;
    this.root.hidden = false;
  }

  dismiss() {
    this.root.hidden = true;
  }

  // Take the banner down if it shows one of `codes` (a restored connection makes those obsolete).
  dismissIf(codes) {
    if (codes.has(this.root.dataset.code)) this.dismiss();
  }
}
