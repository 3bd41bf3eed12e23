// The page over the search service's API: plain JavaScript, no build step. Every request goes to this origin; an
// API key, when the service wants one, is asked once and kept in a cookie (so thumbnails carry it too).
"use strict";

const $ = (selector) => document.querySelector(selector);

async function api(path, options = {}) {
  let answer = await fetch(path, options);
  if (answer.status === 401) {
    const key = prompt("This search service wants its API key:");
    if (key) {
      document.cookie = `vision_assets_key=${encodeURIComponent(key)}; path=/; SameSite=Strict`;
      answer = await fetch(path, options);
    }
  }
  const body = await answer.json();
  if (!answer.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}

function element(tag, attributes = {}, ...children) {
  const made = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick") made.onclick = value; else made.setAttribute(name, value);
  }
  for (const child of children) if (child !== null) made.append(child);
  return made;
}

function card(hit) {
  const labels = (hit.labels || []).slice(0, 3).map((l) => `${l.name} ${l.confidence.toFixed(2)}`).join(", ");
  const entity = Array.isArray(hit.entity) ? hit.entity.join(", ") : (hit.entity || "");
  const badges = element("div");
  if (hit.needs_review) badges.append(element("span", {class: "badge doubt", title: (hit.review_reasons || []).join("; ")}, "needs review"));
  if (hit.reviewed_by) badges.append(element("span", {class: "badge human"}, `reviewed by ${hit.reviewed_by}`));
  else if (hit.label_source === "referee") badges.append(element("span", {class: "badge referee", title: hit.referee}, "settled by the referee"));
  else if (hit.referee) badges.append(element("span", {class: "badge referee", title: hit.referee}, "referee did not settle"));
  const actions = element("div", {class: "actions"},
    element("a", {href: "#", class: "like", onclick: (event) => { event.preventDefault(); moreLike(hit.image_id); }}, "more like this"),
    hit.links.task ? element("a", {href: hit.links.task, target: "_blank"}, "task") : null,
    hit.links.batch ? element("a", {href: hit.links.batch, target: "_blank"}, "batch") : null);
  return element("div", {class: "card", "data-image": hit.image_id},
    element("img", {src: hit.thumbnail_url, alt: hit.image_id, loading: "lazy"}),
    element("div", {class: "id"}, hit.image_id),
    element("div", {class: "meta"}, `${hit.kind} · score ${hit.score.toFixed(3)}${entity ? " · " + entity : ""}`),
    labels ? element("div", {class: "meta labels"}, labels) : null,
    (hit.scene_tags || []).length ? element("div", {class: "meta"}, "scene: " + hit.scene_tags.join(", ")) : null,
    hit.caption ? element("div", {class: "meta caption" + (hit.matched_caption ? " matched" : ""),
                                  title: hit.matched_caption ? "found by the words of its caption" : "its caption"}, `“${hit.caption}”`) : null,
    badges, actions);
}

let next = null;  // a function that loads the next page of the current results

function show(path, said, append = false) {
  return api(path).then((answer) => {
    if (!append) $("#results").replaceChildren();
    $("#results").append(...answer.hits.map(card));
    $("#said").className = "";
    $("#said").textContent = answer.hits.length || append ? said : `${said}: nothing found`;
    $("#more").hidden = answer.next_offset === null;
    $("#results").dataset.query = path;  // what the grid shows now (a test, or a person's devtools, can tell)
    next = () => show(path.replace(/([?&])offset=\d+/, "$1") + `&offset=${answer.next_offset}`, said, true);
  }).catch((error) => { $("#said").className = "error"; $("#said").textContent = error.message; });
}

function queryParameters() {
  const form = new FormData($("#query"));
  const parameters = new URLSearchParams();
  for (const [name, value] of form.entries()) if (value !== "") parameters.set(name, value);
  parameters.set("limit", "24");
  return parameters;
}

function moreLike(imageId) {
  const parameters = queryParameters();
  parameters.delete("text");
  return show(`/api/like/${encodeURIComponent(imageId)}?${parameters}`, `more like ${imageId}`);
}

$("#query").addEventListener("submit", (event) => {
  event.preventDefault();
  const parameters = queryParameters();
  if (!parameters.get("text")) { $("#said").textContent = "type what to look for"; return; }
  show(`/api/search?${parameters}`, `“${parameters.get("text")}”`);
});
$("#more").onclick = () => next && next();

let reviewAfter = null;
function loadReview(append) {
  const after = append && reviewAfter ? `&after=${encodeURIComponent(reviewAfter)}` : "";
  return api(`/api/review?limit=24${after}`).then((answer) => {
    if (!append) $("#review-list").replaceChildren();
    $("#review-list").append(...answer.hits.map(card));
    if (!answer.hits.length && !append) $("#review-list").append(element("p", {}, "Nothing needs a person now."));
    reviewAfter = answer.next;
    $("#review-more").hidden = answer.next === null;
  });
}
$("#review-more").onclick = () => loadReview(true);

let groupsOffset = 0;
function loadGroups(append) {
  if (!append) groupsOffset = 0;
  return api(`/api/duplicates?limit=20&offset=${groupsOffset}`).then((answer) => {
    if (!append) $("#groups").replaceChildren();
    for (const group of answer.groups) {
      $("#groups").append(element("div", {class: "group"},
        element("div", {class: "meta"}, `${group.kind} duplicates · ${group.images.length} images`),
        element("div", {class: "row"}, ...group.images.map((id) =>
          element("img", {src: `/api/thumbnails/${encodeURIComponent(id)}?side=160&boxes=false`, alt: id, title: id})))));
    }
    if (!answer.groups.length && !append) {
      $("#groups").append(element("p", {}, answer.catalogue_at
        ? `No duplicates in the catalogue (refreshed ${new Date(answer.catalogue_at).toLocaleString()}).`
        : "No catalogue yet: the catalog_refresh sensor builds it after the first batch's run (it looks every " +
          "VISION_ASSETS_CATALOG_REFRESH_SECONDS, 60 by default), or materialize image_catalog in Dagster now."));
    }
    groupsOffset = answer.next_offset || 0;
    $("#groups-more").hidden = answer.next_offset === null;
  });
}
$("#groups-more").onclick = () => loadGroups(true);

for (const tab of document.querySelectorAll("nav button")) {
  tab.onclick = () => {
    for (const other of document.querySelectorAll("nav button")) other.classList.toggle("active", other === tab);
    for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== tab.dataset.tab;
    if (tab.dataset.tab === "review") loadReview(false);
    if (tab.dataset.tab === "duplicates") loadGroups(false);
  };
}
