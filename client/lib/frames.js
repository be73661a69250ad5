// Counting the frames a <video> element has presented (what a viewer actually saw, not what arrived).

const canCountPresentedFrames = "requestVideoFrameCallback" in HTMLVideoElement.prototype;

export class FrameCounter {
  constructor(video) {
    this.video = video;
    this.presented = 0;
    if (canCountPresentedFrames) {
      const onFrame = () => {
        this.presented += 1;
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }
  }

  get count() {
    return canCountPresentedFrames ? this.presented : this.video.getVideoPlaybackQuality().totalVideoFrames;
  }
}
