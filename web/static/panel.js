// clawden panel: the little script the pages need beyond htmx.
// Loaded from /static (the CSP allows no inline script). It never inserts
// text as HTML: streamed replies are added as text nodes.
"use strict";

// The web chat (/claws/NAME/chat): the form is sent with fetch(), and the
// reply's server-sent events are read from the response body as they come.
// Pieces are model text, so they become text nodes; once the reply is
// stored, htmx swaps in the server's rendering of it (Markdown made inert
// on the server, web/markdown.py).
(function () {
  function pendingMessage(log, direction, text) {
    const article = document.createElement("article");
    article.className = "msg msg-" + direction + " msg-pending";
    const body = document.createElement("div");
    body.className = "msg-body msg-plain";
    body.appendChild(document.createTextNode(text));
    article.appendChild(body);
    log.appendChild(article);
    return { article: article, body: body };
  }

  // "event: NAME\ndata: JSON\n\n" blocks; comment lines (keep-alives) skipped.
  async function* serverEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) return;
      buffer += decoder.decode(chunk.value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        let data = null;
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data = JSON.parse(line.slice(6));
        }
        if (data !== null) yield { name: name, data: data };
      }
    }
  }

  function swapStored(form, id, target) {
    return htmx.ajax("GET", form.dataset.messages + String(Number(id)), {
      target: target,
      swap: "outerHTML",
    });
  }

  async function send(form) {
    const log = document.getElementById("chat-log");
    const textarea = form.elements.namedItem("text");
    const status = form.querySelector(".chat-status");
    const button = form.querySelector("button");
    const csrf = form.elements.namedItem("csrf").value;
    const text = textarea.value;
    button.disabled = true;
    status.textContent = "sending…";
    document.getElementById("errors").textContent = "";
    try {
      const response = await fetch(form.action, {
        method: "POST",
        // HX-Request: a refusal comes back as the small error partial.
        headers: { "X-CSRF-Token": csrf, "HX-Request": "true" },
        body: new URLSearchParams({ text: text }),
        credentials: "same-origin",
      });
      if (!response.ok) {
        // Server-rendered and escaped there, like every htmx error swap.
        htmx.swap("#errors", await response.text(), { swapStyle: "innerHTML" });
        status.textContent = "";
        return;
      }
      textarea.value = "";
      const empty = log.querySelector(".chat-empty");
      if (empty) empty.remove();
      const mine = pendingMessage(log, "in", text);
      const reply = pendingMessage(log, "out", "");
      status.textContent = "the claw is answering…";
      for await (const event of serverEvents(response)) {
        if (event.name === "piece") {
          reply.body.appendChild(document.createTextNode(String(event.data)));
          reply.article.scrollIntoView({ block: "end" });
        } else if (event.name === "error") {
          reply.article.classList.add("msg-error");
          const fix = event.data.fix ? " — " + event.data.fix : "";
          reply.body.textContent = String(event.data.what) + fix;
        } else if (event.name === "done") {
          if (event.data.in_id !== null) await swapStored(form, event.data.in_id, mine.article);
          if (event.data.out_id !== null) await swapStored(form, event.data.out_id, reply.article);
          else reply.article.classList.remove("msg-pending");
        }
      }
      status.textContent = "";
    } catch (err) {
      status.textContent = "the connection broke; reload the page to see the stored reply";
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.id === "chat-form") {
      event.preventDefault();
      send(form);
    }
  });
})();
