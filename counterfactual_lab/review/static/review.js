// The review page (served by counterfactual_lab/review/server.py). Every text is written with
// textContent: nothing from the run (ids, values, captions) can become markup.
"use strict";

const TARGET = { y: "yes", n: "no", c: "cant_tell" };
const TARGET_TEXT = { yes: "yes (y)", no: "no (n)", cant_tell: "can't tell (c)" };
const OTHER_TEXT = {
  none: "none (0)", other_attribute: "other attribute (1)", background: "background or scene (2)",
  identity: "identity (3)", unusable: "unusable image (4)",
};
const NOT_ANSWERING = "Not saved: the review server is not answering. Restart `cflab review` and open the address it prints.";

let state = null;   // from /api/state
let index = 0;      // the set shown
let current = 0;    // the counterfactual of the set the keys answer
const drafts = {};  // set_id -> member -> {target_shown, other_change, note}: on screen, maybe not saved yet
const reveals = {}; // set_id -> what /api/reveal said

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child) node.appendChild(child);
  return node;
}

function banner(message) {
  const node = document.getElementById("banner");
  node.textContent = message || "";
  node.hidden = !message;
}

async function call(method, url, body) {
  let response;
  try {
    response = await fetch(url, {
      method, credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (error) {
    banner(NOT_ANSWERING);
    throw error;
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    banner(response.status === 403 ? data.error : `Not saved: ${data.error || response.statusText}`);
    throw new Error(data.error || String(response.status));
  }
  banner("");
  return data;
}

function currentSet() { return state.sets[index]; }
function saved(setId) { return state.answers[setId] || {}; }

function isComplete(set) {
  const answers = saved(set.set_id);
  return set.members.every((m) => answers[m.member]);
}

function draftOf(set, member) {
  drafts[set.set_id] = drafts[set.set_id] || {};
  if (!drafts[set.set_id][member.member]) {
    const done = saved(set.set_id)[member.member];
    drafts[set.set_id][member.member] = done ? { ...done } : { target_shown: null, other_change: null, note: "" };
  }
  return drafts[set.set_id][member.member];
}

function progress() {
  const done = state.sets.filter(isComplete).length;
  document.getElementById("progress").textContent = `set ${index + 1} of ${state.sets.length} · ${done} done`;
}

function radioGroup(name, legend, values, texts, chosen, onChoose) {
  const box = el("fieldset", { class: "choices" }, el("legend", { text: legend }));
  for (const value of values) {
    const input = el("input", { type: "radio", name, value, checked: chosen === value, tabindex: "-1" });
    input.addEventListener("change", () => onChoose(value));
    box.appendChild(el("label", { class: "choice" }, input, el("span", { text: texts[value] })));
  }
  return box;
}

function figure(cls, img, caption) {
  return el("figure", { class: cls }, el("img", { src: `/img/${img}`, alt: caption }), el("figcaption", { text: caption }));
}

function render() {
  const set = currentSet();
  const main = document.getElementById("set");
  main.replaceChildren();
  progress();
  document.getElementById("who").textContent = `${state.reviewer} · run ${state.run_id}`;
  const reconstruction = set.references.find((r) => r.role === "reconstruction");
  const members = el("div", { class: "members" });
  set.members.forEach((member, i) => {
    const draft = draftOf(set, member);
    const isSaved = Boolean(saved(set.set_id)[member.member]);
    const card = el("article", { class: `member${i === current ? " current" : ""}`, tabindex: "-1", "data-member": member.member });
    const target = `${set.attribute}: ${set.source_value} → ${member.target_value}`;
    const pair = el("div", { class: "pair" }, figure("judged", member.img, `counterfactual (${target})`));
    if (reconstruction) pair.appendChild(figure("reference", reconstruction.img, "reconstruction (nothing changed)"));
    card.appendChild(pair);
    const questions = el("div", { class: "questions" }, el("p", { class: "question", text: member.question }));
    questions.appendChild(radioGroup(`t-${i}`, `Shows ${set.attribute} = ${member.target_value}?`, state.vocabulary.target_shown,
      TARGET_TEXT, draft.target_shown, (v) => { current = i; answer({ target_shown: v }); }));
    questions.appendChild(radioGroup(`o-${i}`, "Anything else changed that matters?", state.vocabulary.other_change,
      OTHER_TEXT, draft.other_change, (v) => { current = i; answer({ other_change: v }); }));
    const note = el("textarea", { class: "note", rows: "2", maxlength: "2000", "aria-label": "note (optional)", placeholder: "note (optional; . to write, Esc to leave)" });
    note.value = draft.note || "";
    note.addEventListener("input", () => { draft.note = note.value; });
    note.addEventListener("change", () => { current = i; if (draft.target_shown && draft.other_change) save(set, member); });
    questions.appendChild(note);
    questions.appendChild(el("p", { class: `status${isSaved ? " saved" : ""}`, text: isSaved ? "saved" : "not answered yet" }));
    questions.appendChild(revealOf(set, member));
    card.appendChild(questions);
    members.appendChild(card);
  });
  const refs = el("div", { class: "refs" });
  for (const ref of set.references) {
    if (ref.role !== "reconstruction") refs.appendChild(figure("reference small", ref.img, ref.role === "original" ? "original" : "control (another seed, nothing changed)"));
  }
  main.appendChild(el("h1", { text: `${set.attribute}: ${set.source_value} → ${set.members.map((m) => m.target_value).join(", ")}` }));
  const found = isComplete(set) ? reveals[set.set_id] : null;
  main.appendChild(found
    ? el("p", { class: "reveal caption", text: `original caption: ${found.original_caption || "(none)"}` })
    : el("p", { class: "hidden-note", text: "The captions and what the judge said appear once you have answered every counterfactual of this set." }));
  main.appendChild(members);
  if (refs.childElementCount) main.appendChild(refs);
  document.getElementById("prev").disabled = index === 0;
  document.getElementById("next").disabled = index === state.sets.length - 1;
}

function revealOf(set, member) {
  const found = isComplete(set) ? reveals[set.set_id] : null;
  const mine = found ? found.members.find((m) => m.member === member.member) : null;
  if (!mine) return el("div", { class: "reveal-slot" });
  const scores = Object.entries(mine.scores).filter(([, v]) => v !== null)
    .map(([k, v]) => `${k.replace("_", " ")} ${Number(v).toFixed(3)}`).join(" · ");
  const verdict = mine.judge_kept ? "kept" : `dropped (${mine.drop_reason || "no reason given"})`;
  return el("div", { class: `reveal judge ${mine.judge_pass ? "pass" : "fail"}` },
    el("p", { text: `caption: ${mine.caption || "(none)"}` }),
    el("p", { class: "verdict", text: `judge: ${verdict}` }),
    scores ? el("p", { class: "scores", text: scores }) : null);
}

async function loadReveal(set) {
  if (!isComplete(set) || reveals[set.set_id]) return;
  try {
    reveals[set.set_id] = await call("GET", `/api/reveal/${encodeURIComponent(set.set_id)}`);
  } catch (error) { return; }
  if (currentSet() === set) render();
}

function focusCurrent() {
  const card = document.querySelectorAll("article.member")[current];
  if (card && !card.contains(document.activeElement)) card.focus({ preventScroll: false });
}

async function save(set, member) {
  const draft = draftOf(set, member);
  const body = { set_id: set.set_id, member: member.member, target_shown: draft.target_shown, other_change: draft.other_change, note: draft.note || null };
  try {
    await call("POST", "/api/label", body);
  } catch (error) {
    render();
    return false;
  }
  state.answers[set.set_id] = { ...saved(set.set_id), [member.member]: { ...draft } };
  return true;
}

function drafted(set, member) {
  const draft = draftOf(set, member);
  return Boolean(draft.target_shown && draft.other_change);
}

async function answer(change) {
  const set = currentSet();
  const at = current;
  const member = set.members[at];
  Object.assign(draftOf(set, member), change);
  const ready = drafted(set, member);
  if (ready) {
    // Move on at once: keys typed while the answer is saved answer the next counterfactual.
    const next = set.members.findIndex((m, i) => i > at && !drafted(set, m));
    if (next >= 0) current = next;
  }
  render();
  focusCurrent();
  if (!ready) return;
  if (!(await save(set, member))) {
    if (currentSet() === set) { current = at; render(); focusCurrent(); }  // stay on the unsaved answer
    return;
  }
  if (currentSet() === set) render(); else progress();
  await loadReveal(set);
}

function show(newIndex) {
  index = Math.max(0, Math.min(state.sets.length - 1, newIndex));
  const set = currentSet();
  const open = set.members.findIndex((m) => !saved(set.set_id)[m.member]);
  current = open >= 0 ? open : 0;
  render();
  focusCurrent();
  loadReveal(set);
}

async function undo() {
  let result;
  try {
    result = await call("POST", "/api/undo", {});
  } catch (error) { return; }
  if (!result.undone) return;
  await load();
  const at = state.sets.findIndex((s) => s.set_id === result.undone.set_id);
  if (at < 0) return;
  delete drafts[result.undone.set_id];
  delete reveals[result.undone.set_id];
  index = at;
  current = Math.max(0, currentSet().members.findIndex((m) => m.member === result.undone.member));
  render();
  focusCurrent();
}

function toggleHelp() {
  const help = document.getElementById("help");
  help.hidden = !help.hidden;
  document.getElementById("help-toggle").setAttribute("aria-expanded", String(!help.hidden));
}

function onKey(event) {
  if (!state || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLTextAreaElement) {
    if (event.key === "Escape") { target.blur(); focusCurrent(); event.preventDefault(); }
    return;
  }
  const key = event.key;
  const set = currentSet();
  if (key in TARGET) { event.preventDefault(); answer({ target_shown: TARGET[key] }); }
  else if (/^[0-4]$/.test(key)) { event.preventDefault(); answer({ other_change: state.vocabulary.other_change[Number(key)] }); }
  else if (key === "Tab") {
    const step = event.shiftKey ? -1 : 1;
    if (current + step >= 0 && current + step < set.members.length) {
      event.preventDefault();
      current += step;
      render();
      focusCurrent();
    }
  } else if ((key === "Enter" && !(target instanceof HTMLButtonElement)) || key === "ArrowRight") { event.preventDefault(); show(index + 1); }
  else if (key === "ArrowLeft") { event.preventDefault(); show(index - 1); }
  else if (key === "u") { event.preventDefault(); undo(); }
  else if (key === ".") {
    event.preventDefault();
    const notes = document.querySelectorAll("textarea.note");
    if (notes[current]) notes[current].focus();
  } else if (key === "?") { event.preventDefault(); toggleHelp(); }
}

async function load() {
  state = await call("GET", "/api/state");
}

async function start() {
  document.addEventListener("keydown", onKey, true);
  document.getElementById("prev").addEventListener("click", () => show(index - 1));
  document.getElementById("next").addEventListener("click", () => show(index + 1));
  document.getElementById("undo").addEventListener("click", () => undo());
  document.getElementById("help-toggle").addEventListener("click", toggleHelp);
  try {
    await load();
  } catch (error) { return; }
  if (!state.sets.length) {
    document.getElementById("progress").textContent = "the sample is empty";
    return;
  }
  show(state.resume_at);
}

start();
